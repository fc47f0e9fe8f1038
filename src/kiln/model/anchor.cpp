// placeholder so the layer library is never empty
namespace kiln { void model_layer_anchor() {} }

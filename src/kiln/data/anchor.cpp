// placeholder so the layer library is never empty
namespace kiln { void data_layer_anchor() {} }

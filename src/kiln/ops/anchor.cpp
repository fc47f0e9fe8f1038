// placeholder so the layer library is never empty
namespace kiln { void ops_layer_anchor() {} }

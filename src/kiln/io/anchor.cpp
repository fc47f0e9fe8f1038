// placeholder so the layer library is never empty
namespace kiln { void io_layer_anchor() {} }

// placeholder so the layer library is never empty
namespace kiln { void train_layer_anchor() {} }

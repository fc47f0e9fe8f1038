// placeholder so the layer library is never empty
namespace kiln { void tokenizer_layer_anchor() {} }

"""Graph rewrites, one module per technique. Each pass is a function of (model, [statistics], [config])
that mutates an onnx-ir Model in place and returns a small summary of what it changed."""

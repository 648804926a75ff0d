"""Framework converters: Keras 3 (through tf2onnx) to ONNX with dropout kept switchable.

Importing this package is cheap: TensorFlow is imported only when a converter runs.
(The PyTorch helper is its own package, ``spatialdrop_onnx.torch``.)

- ``keras_convert``: the ``convert`` pipeline (load safely, find the random
  layers, trace, export, rewrite, fuse RNNs, make loops portable, check, save);
  one module per step: ``keras_stack`` (optional dependencies), ``keras_input``
  (safe loading), ``keras_archive`` (the .keras zip), ``keras_legacy`` (Keras 2
  configs translated), ``keras_layers`` / ``keras_probe`` (which layers are
  random), ``keras_trace`` (the trace with chosen layers in training mode),
  ``keras_export`` (tf2onnx with the fixes real models need), ``keras_attribution``
  (ONNX node → Keras layer), ``keras_rnn`` / ``keras_rnn_spec`` (GRU/LSTM as the
  fused ONNX op), ``keras_verify`` (checks), ``keras_report`` (the report).
- ``native_output``: keeps TensorFlow's C++ log lines off the terminal.
"""

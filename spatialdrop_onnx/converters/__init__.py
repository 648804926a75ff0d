"""Framework converters: Keras 3 (through tf2onnx) to ONNX with dropout kept switchable.

Importing this package is cheap: TensorFlow is imported only when a converter runs.

- ``keras_trace``: trace a Keras model with only its dropout layers in training
  mode and export it with tf2onnx (``export_keras_training_graph``).
- ``keras_convert``: the whole ``convert`` pipeline (load safely, trace, rewrite,
  check, save) and its report.
"""

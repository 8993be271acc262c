"""ONNX: torch -> ONNX export (`export`), the one parity rule (`parity`), and graph helpers (`graph`).

Named `compress.onnx`; inside it `import onnx` is still the onnx package (absolute imports).
"""

"""The trained policy for the car: ONNX graphs (float and INT8), a C reference and deploy.json.

See roadsense.export.exporter for the files and roadsense.export.graph for their inputs and outputs.
"""

"""Generated gRPC/protobuf modules (build/gen_protos.py). Do not edit by hand.

Importing this package imports nothing; import the ``*_pb2``/``*_pb2_grpc``
module you need.
"""

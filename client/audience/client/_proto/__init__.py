"""Generated gRPC stubs (scripts/gen_protos.sh). Do not edit."""

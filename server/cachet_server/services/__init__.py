"""One module per gRPC service: validate the request, call the backend, map the result."""

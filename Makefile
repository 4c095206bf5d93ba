# fnsession entry points. `make help` lists them. Everything expensive is cached outside the checkout
# in $(FNSESSION_CACHE) (default ~/.cache/fnsession), keyed by version.
SHELL := /bin/bash
.DEFAULT_GOAL := help

FNSESSION_CACHE ?= $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/fnsession
export FNSESSION_CACHE
PYTHON ?= python3.11
VENV ?= .venv
KWOK_NODES ?= 0
export KWOK_NODES

# Which cluster the deploy and test targets talk to:
#   local (default)  the cluster `make cluster-up` runs on this machine
#   kind             the kind cluster `make kind-up` made (Docker needed), images loaded with `kind load`
#   other            whatever KUBECONFIG names; IMAGE_LOADER says how to load images (see hack/images/load.sh)
CLUSTER ?= local
ifeq ($(CLUSTER),local)
  export KUBECONFIG := $(FNSESSION_CACHE)/pki/admin.kubeconfig
  export IMAGE_LOADER := local
else ifeq ($(CLUSTER),kind)
  export KUBECONFIG := $(FNSESSION_CACHE)/kind.kubeconfig
  export IMAGE_LOADER := kind
else ifeq ($(CLUSTER),other)
  ifeq ($(strip $(KUBECONFIG)),)
    $(error CLUSTER=other needs KUBECONFIG=<path> naming the cluster)
  endif
  ifeq ($(strip $(IMAGE_LOADER)),)
    $(error CLUSTER=other needs IMAGE_LOADER='<command>', run as <command> <image archive>, to load images)
  endif
else
  $(error CLUSTER must be local, kind or other, not '$(CLUSTER)')
endif
export FNSESSION_CLUSTER := $(CLUSTER)

PYTEST ?= $(VENV)/bin/pytest
PYTEST_ARGS ?=

.PHONY: help
help: ## list the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-z-]+:.*## / {printf "  \033[1m%-15s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

# --- local cluster --------------------------------------------------------------------------------
.PHONY: cluster-up cluster-down cluster-status
cluster-up: ## install what is missing, build Kubernetes from Go modules (cached), start a one-node cluster (KWOK_NODES=N adds fake nodes)
	@hack/cluster/up.sh

cluster-down: ## stop the local cluster and remove every process, mount, netns, bridge and iptables chain it made (RESET=1 wipes its data)
	@hack/cluster/down.sh

cluster-status: ## show the local cluster's components, nodes, images and KUBECONFIG
	@hack/cluster/status.sh

# --- images and deployment ------------------------------------------------------------------------
.PHONY: crds images deploy undeploy gateway-url kind-up
crds: $(VENV)/.installed ## regenerate crds/ from the models in operator/fnsession/api (a unit test fails when they drift)
	@$(VENV)/bin/python -m fnsession.api.crds crds

images: ## build the project, sample-function and tenant-init images (no registry) and load them into the cluster
	@hack/images/build-all.sh

deploy: ## apply crds/ and manifests/ to the cluster
	@hack/deploy.sh

undeploy: ## delete what deploy applied
	@UNDEPLOY=1 hack/deploy.sh

gateway-url: ## print a base URL of the deployed gateway that works from this host
	@ip=$$($(FNSESSION_CACHE)/bin/kubectl -n fnsession-system get service fnsession-gateway -o jsonpath='{.spec.clusterIP}' 2>/dev/null) && [ -n "$$ip" ] \
	  && echo "http://$$ip" || { echo "no gateway deployed: make deploy" >&2; exit 1; }

kind-up: ## for machines with Docker: create a kind cluster, `kind load` the images, deploy (then use CLUSTER=kind)
	@hack/kind/up.sh

.PHONY: helm
helm: ## build helm (HELM_VERSION, default v4.3.2) from its Go module into $(FNSESSION_CACHE)/bin (cached; install-deps does it too)
	@hack/tools/helm.sh

# --- Python environment ---------------------------------------------------------------------------
$(VENV)/.installed: pyproject.toml setup.py operator/fnsession/gateway/_lane.c
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found (fnsession needs Python 3.11+; set PYTHON=...)" >&2; exit 1; }
	@echo "==> creating $(VENV) and installing fnsession with its test dependencies"
	@$(PYTHON) -m venv $(VENV)
	@$(VENV)/bin/pip install --quiet --disable-pip-version-check -e '.[test,lint]'
	@touch $@

.PHONY: venv
venv: $(VENV)/.installed ## create .venv with fnsession installed in editable mode

# --- static checks --------------------------------------------------------------------------------
SHELL_SCRIPTS = $(wildcard hack/*.sh hack/*/*.sh) .ci/run
.PHONY: lint
lint: $(VENV)/.installed ## static checks: ruff, mypy (strict for api/ core/ kube/), import-linter contracts, API calls only in kube/, comments that stand on the repository alone, shellcheck
	@rc=0; \
	echo "==> ruff"; $(VENV)/bin/ruff check . || rc=1; \
	echo "==> mypy"; $(VENV)/bin/mypy || rc=1; \
	echo "==> import-linter"; $(VENV)/bin/lint-imports --no-cache || rc=1; \
	echo "==> API calls outside kube/"; $(VENV)/bin/python hack/lint/api_calls.py || rc=1; \
	echo "==> comments that point outside the repository"; \
	  ! grep -rnE 'SPEC §|seeds/0|\.\./shared/|STYLE\.md|fc-sdk-wire\.md|kopf-measured\.md' operator/fnsession tests hack --include='*.py' --include='*.c' --include='*.sh' \
	  --exclude-dir=fc_programs || rc=1; \
	echo "==> shellcheck"; { command -v shellcheck >/dev/null || { echo "shellcheck is not installed (hack/install-deps.sh installs it)"; false; }; } \
	  && shellcheck $(SHELL_SCRIPTS) && echo "shellcheck: $(words $(SHELL_SCRIPTS)) scripts clean" || rc=1; \
	exit $$rc

# --- demo and tests -------------------------------------------------------------------------------
.PHONY: demo test test-unit test-e2e bench bench-gateway bench-scale fuzz
bench: $(VENV)/.installed images deploy ## create->Active latency over 100 sessions (warm instance, new pod); see bench/README.md
	$(VENV)/bin/python bench/create_to_active.py

bench-gateway: $(VENV)/.installed images deploy ## the gateway against HAProxy and the direct path (wrk), its Python per request, create->routable; see bench/README.md
	bench/gateway_vs_haproxy.sh
	$(VENV)/bin/python bench/gateway_python_path.py
	$(VENV)/bin/python bench/create_to_routable.py

STEPS ?= 1000,5000,10000,20000
RATE ?= 50
EXPIRIES ?= 5000
bench-scale: $(VENV)/.installed images deploy ## the operator on the kwok nodes: creates at RATE/s up to each of STEPS live sessions, EXPIRIES due in 10 s; see bench/README.md
	$(VENV)/bin/python bench/scale.py --steps $(STEPS) --rate $(RATE) --expiries $(EXPIRIES)

demo: local-cluster images deploy ## on the local cluster (brought up when down): sessions sharing instances, routing by header, a TTL, and two tenants sharing one volume, showing what each can see
	@hack/demo.sh

test-unit: $(VENV)/.installed ## unit tests and the gateway's adversarial suite (loopback only), no cluster
	$(PYTEST) tests/unit tests/adversarial $(PYTEST_ARGS)

FUZZ_SECONDS ?= 60
fuzz: $(VENV)/.installed ## the lane's C scans and the connection state machine under ASan/UBSan with atheris, FUZZ_SECONDS (default 60) in all; see README.md (Tests)
	PYTHON=$(abspath $(VENV))/bin/python FUZZ_SECONDS=$(FUZZ_SECONDS) tests/fuzz/run.sh

test-e2e: $(VENV)/.installed images deploy ## integration tests against the cluster (CLUSTER=local|kind|other)
	$(PYTEST) tests/integration $(PYTEST_ARGS)

TEST_KWOK_NODES ?= 2
test: $(VENV)/.installed test-cluster images deploy ## everything CI runs: unit and integration tests, every test required to run
	FNSESSION_REQUIRE_ALL=1 $(PYTEST) tests $(PYTEST_ARGS)

.PHONY: local-cluster test-cluster
local-cluster: # the local cluster up as `make cluster-up` brings it (a no-op when it already is)
ifeq ($(CLUSTER),local)
	@set -o pipefail; hack/cluster/up.sh | tail -1
endif

test-cluster: # the local cluster up, with the kwok nodes the scale tests use (a no-op when it already is)
ifeq ($(CLUSTER),local)
	@set -o pipefail; KWOK_NODES=$(if $(filter-out 0,$(KWOK_NODES)),$(KWOK_NODES),$(TEST_KWOK_NODES)) hack/cluster/up.sh | tail -1
endif

# bastion: the two commands of the README, and the virtualenv they share.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test check venv clean

$(STAMP): pyproject.toml
	@$(PYTHON) -m venv $(VENV) || { echo "make: cannot create a virtualenv: apt-get install python3-venv" >&2; exit 1; }
	$(PY) -m pip install -q --upgrade pip
	@if pkg-config --exists tss2-esys 2>/dev/null; then \
	  $(PY) -m pip install -q -e '.[tpm,server,dev]'; \
	else \
	  echo "make: libtss2-dev not found: installing without the tpm2-pytss backend (apt-get install libtss2-dev pkg-config)"; \
	  $(PY) -m pip install -q -e '.[server,dev]'; \
	fi
	@touch $(STAMP)

venv: $(STAMP)

## bastion's main job on the embedded defaults
demo: $(STAMP)
	$(VENV)/bin/bastion demo

## the whole test suite (tests needing a missing system tool skip, naming its package; not in CI)
test: $(STAMP)
	$(PY) -m pytest -n 2 -q

check: $(STAMP)
	scripts/check

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis

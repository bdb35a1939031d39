# bastion: the two commands of the README, and the virtualenv they share.
# `make demo` and `make test` first install the Debian packages in scripts/system-packages.txt
# (apt-get as root; otherwise one line naming the command to run, and a non-zero exit).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test check venv system-packages clean

system-packages:
	@scripts/install-system-packages

$(STAMP): pyproject.toml scripts/system-packages.txt
	@scripts/install-system-packages
	@$(PYTHON) -m venv $(VENV) || { echo "make: cannot create a virtualenv: apt-get install python3-venv" >&2; exit 1; }
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[tpm,server,dev]'
	@touch $(STAMP)

venv: $(STAMP)

## bastion's main job on the embedded defaults
demo: system-packages $(STAMP)
	$(VENV)/bin/bastion demo

## the whole test suite; strict: a missing tool or any skipped test fails the run
test: system-packages $(STAMP)
	BASTION_STRICT_TESTS=1 $(PY) -m pytest -n 2 -q

check: $(STAMP)
	scripts/check

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis

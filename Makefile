# Every install path goes through constraints.txt, the project's single lock file.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv test test-faults demo bench clean

venv: $(STAMP)

# Re-installs only when the pins or the package metadata change; otherwise a no-op.
$(STAMP): constraints.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	PIP_CONSTRAINT=constraints.txt $(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

# The quick fault-injection variants (tests/faults) are part of `make test`; `make test-faults`
# runs the whole fault suite, heavy variants included (more kills, bigger shards, longer runs).
test: venv
	$(PY) -m pytest -q -n 2 --dist loadgroup -m "not heavy"

test-faults: venv
	$(PY) -m pytest -q -n 2 --dist loadgroup tests/faults

demo: venv
	$(PY) scripts/demo.py

bench: venv
	@for b in scripts/bench/*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf runs/demo .pytest_cache

# Every install path goes through constraints.txt, the project's single lock file.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv test test-faults demo bench gpu-check-dry gpu-carry clean

venv: $(STAMP)

# Re-installs only when the pins or the package metadata change; otherwise a no-op.
$(STAMP): constraints.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	PIP_CONSTRAINT=constraints.txt $(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

# The quick fault-injection variants (tests/faults) are part of `make test`; `make test-faults`
# runs the whole fault suite, heavy variants included (more kills, bigger shards, longer runs).
# Tests marked cuda skip without a GPU (scripts/gpu_check.py runs them on one). The model.compile
# test compiles for real with inductor, which needs a C++ compiler (the one CXX names, else g++): it skips,
# saying so, where none is on PATH.
test: venv
	$(PY) -m pytest -q -n 2 --dist loadgroup -m "not heavy"

test-faults: venv
	$(PY) -m pytest -q -n 2 --dist loadgroup tests/faults

demo: venv
	$(PY) scripts/demo.py

bench: venv
	@for b in scripts/bench/*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

# The GPU check's steps at toy sizes on the CPU (make test runs this too, tests/test_gpu_check.py).
gpu-check-dry: venv
	$(PY) scripts/gpu_check.py --dry-run --out runs/gpu-check-dry

# What scripts/gpu_check.py needs on a bare GPU machine with torch but no package registry
# (docs/benchmarks.md, "GPU"): the pinned pure-Python wheels of webdataset and braceexpand, and,
# where ../shared/data exists, its edge-case images and every 5th ImageNet sample photo for the
# nvJPEG tests. Carry build/gpu with the working tree.
gpu-carry: venv
	rm -rf build/gpu && mkdir -p build/gpu/wheels
	$(PY) -m pip download --quiet --no-deps --only-binary=:all: -c constraints.txt -d build/gpu/wheels \
		webdataset braceexpand
	# simplejpeg is compiled: the wheel for the GPU machine's CPython 3.12
	$(PY) -m pip download --quiet --no-deps --only-binary=:all: -c constraints.txt -d build/gpu/wheels \
		--python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 \
		--platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 simplejpeg
	if [ -d ../shared/data ]; then \
		mkdir -p build/gpu/shared-data/imagenet_samples && \
		cp -r ../shared/data/image_edge_cases build/gpu/shared-data/ && \
		ls ../shared/data/imagenet_samples/*.JPEG | awk 'NR % 5 == 1' | xargs cp -t build/gpu/shared-data/imagenet_samples; \
	fi
	du -sh build/gpu

clean:
	rm -rf runs/demo .pytest_cache

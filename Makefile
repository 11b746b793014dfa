# Two entry points: `make demo` and `make test`. Each creates its virtualenv on first use.
#   .venv       framethink and its dependencies (what users run)
#   .venv-test  the same plus the test tools and the official processors' torchvision (reference only)
PY ?= python3

.PHONY: demo test clean

.venv/.installed: pyproject.toml constraints.txt
	$(PY) -m venv .venv
	.venv/bin/pip install -q --upgrade pip
	# torch from the CPU build first; the constraint keeps every later install from pulling a CUDA build.
	.venv/bin/pip install -q -c constraints.txt torch
	.venv/bin/pip install -q -c constraints.txt -e .
	touch $@

.venv-test/.installed: pyproject.toml constraints.txt tests/support/torchvision_cpu_shim.py
	$(PY) -m venv .venv-test
	.venv-test/bin/pip install -q --upgrade pip
	.venv-test/bin/pip install -q -c constraints.txt torch
	.venv-test/bin/pip install -q -c constraints.txt -e ".[test]" "torchvision==0.28.0"
	# DeepSpeed builds from source against the installed torch (its setup imports torch), so no build isolation.
	.venv-test/bin/pip install -q -c constraints.txt setuptools wheel
	.venv-test/bin/pip install -q -c constraints.txt --no-build-isolation "deepspeed>=0.16,<1"
	site=$$(.venv-test/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])') && \
	  cp tests/support/torchvision_cpu_shim.py "$$site"/ && \
	  echo "import torchvision_cpu_shim" > "$$site"/torchvision_cpu_shim.pth
	touch $@

demo: .venv/.installed
	.venv/bin/framethink demo --out runs/demo

test: .venv-test/.installed
	.venv-test/bin/python -m pytest tests

clean:
	rm -rf .venv .venv-test runs

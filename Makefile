# Developer shortcuts. CI itself runs .ci/run.
PY ?= python3

.PHONY: build cythonize test test-pure bench sdist wheel-pure wheels manpages debug clean

build:            ## compile the Cython speedups in place
	$(PY) setup.py build_ext --inplace

cythonize:        ## generate .c next to each .pyx (shipped in the sdist: no Cython needed to install)
	$(PY) -m cython -3 _speedups/*.pyx

test: build       ## both implementations (parametrized), both event loops
	$(PY) -m pytest -q

test-pure:        ## the whole suite with the pure twins only, as a compiler-less host runs it
	NOPORTS_NO_EXTENSIONS=1 $(PY) -m pytest -q --no-c-extensions

bench: build      ## benchmark table (ratios against baselines measured in the same run)
	$(PY) bench/run.py

debug:            ## line tracing in the extensions (profilers, coverage)
	CFLAGS="-DCYTHON_TRACE=1" $(PY) setup.py build_ext --inplace --force

sdist:            ## .pyx + generated .c (setup.py's sdist step cythonizes; installing needs no Cython)
	$(PY) -m build --sdist

wheel-pure:       ## py3-none-any wheel for hosts no platform wheel covers (records itself as pure)
	NOPORTS_NO_EXTENSIONS=1 $(PY) -m pip wheel --no-deps -w dist .

manpages:         ## regenerate packaging/man from the argparse parsers (tests fail when stale)
	$(PY) -m noports.cli.manpages packaging/man

wheels:           ## platform wheels via cibuildwheel (Docker; armv7l/riscv64 under QEMU)
	$(PY) -m cibuildwheel --output-dir dist

clean:
	rm -rf build dist *.egg-info noports/_speedups/*.so _speedups/*.c

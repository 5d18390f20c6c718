# Quick start: `make demo` (set-up + the main job), `make test` (the test suite).
.PHONY: setup demo test test-slow

setup:
	bash scripts/setup.sh

demo: setup
	bash scripts/demo.sh

test: setup
	.venv/bin/python -m pytest

test-slow: setup
	.venv/bin/python -m pytest -m slow

# Thin wrappers around ./dev, which also works where make is not installed.
.PHONY: run test lint bench bench-quick dist
run:
	./dev run
test:
	./dev test
lint:
	./dev lint
bench:
	./dev bench
bench-quick:
	./dev bench --quick
dist:
	./dev dist

# make demo — set up .venv and run a real MixedAE + MAE pre-training and k-NN evaluation, beside the k-NN of an
#             untrained encoder of the same shape (CPU, minutes)
# make test — set up .venv and run the test suite
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)
DEMO   ?= runs/demo
KNN_DATA := --data synthetic data.image_size=32 data.num_samples=2000

.PHONY: install demo test clean-demo

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e ".[test]"
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

demo: $(STAMP)
	$(PY) -m mixedae pretrain --config configs/pretrain/demo_mixedae.yaml --output-dir $(DEMO)/mixedae --resume auto
	$(PY) -m mixedae pretrain --config configs/pretrain/demo_mae.yaml --output-dir $(DEMO)/mae --resume auto
	$(PY) -m mixedae knn --weights $(DEMO)/mixedae $(KNN_DATA) --k 20
	$(PY) -m mixedae knn --weights $(DEMO)/mae $(KNN_DATA) --k 20
	@echo "the same k-NN on an untrained encoder of the same shape (the difference is what pre-training added):"
	$(PY) -m mixedae knn --weights $(DEMO)/mixedae $(KNN_DATA) --k 20 --random-init
	$(PY) -m mixedae knn --weights $(DEMO)/mae $(KNN_DATA) --k 20 --random-init
	$(PY) -m mixedae report $(DEMO)/mixedae $(DEMO)/mae --out $(DEMO)/report.html
	@echo "reconstructions: $(DEMO)/mixedae/recon/  $(DEMO)/mae/recon/   report: $(DEMO)/report.html"

clean-demo:
	rm -rf $(DEMO)

# Half-Precision Training from Zero: the course's commands.
#
#   make lab        set up .venv if needed, then start JupyterLab on the course
#   make test       set up .venv if needed, then run the whole test suite
#   make grade      grade the notebooks in notebooks/ (or GRADE=path ...)
#   make notebooks  rebuild the learner notebooks in notebooks/ from solutions/
#   make solutions  re-execute solutions/ in place (refreshes stored outputs)
#
# Variables: PYTHON (interpreter that creates .venv), TORCH / TORCH_INDEX
# (override the automatic torch choice), PORT and IP (where JupyterLab listens;
# IP=0.0.0.0 to reach it from another machine).

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.course-installed
PORT   ?= 8888
IP     ?= 127.0.0.1
GRADE  ?= notebooks
KERNEL_NAME := half-precision-course
# JupyterLab refuses to run as root unless told it may.
ALLOW_ROOT := $(shell [ "$$(id -u)" = 0 ] && echo --allow-root)
export TORCH TORCH_INDEX

.PHONY: install lab test grade notebooks solutions clean

install: $(STAMP)

$(STAMP): pyproject.toml tools/install_torch.py tools/jupyterlab-overrides.json
	@test -x $(PY) || { echo "[setup] creating $(VENV) with $(PYTHON)"; $(PYTHON) -m venv $(VENV); }
	$(PY) tools/install_torch.py
	$(PY) -m pip install --disable-pip-version-check -e ".[lab,dev,keras,qat]"
	$(PY) -m ipykernel install --sys-prefix --name $(KERNEL_NAME) \
	    --display-name "Half-Precision Training (course)"
	@# JupyterLab settings for the course (no "Jupyter news" prompt, no update check)
	mkdir -p $(VENV)/share/jupyter/lab/settings
	cp tools/jupyterlab-overrides.json $(VENV)/share/jupyter/lab/settings/overrides.json
	@touch $(STAMP)
	@echo "[setup] done: $(VENV) has the course, torch and the '$(KERNEL_NAME)' kernel"

# JupyterLab refuses to run as root without --allow-root; no browser is opened
# (the URL with its token is printed), so this works on a headless machine.
lab: $(STAMP)
	$(VENV)/bin/jupyter lab --no-browser --ip=$(IP) --port=$(PORT) $(ALLOW_ROOT) \
	    --ServerApp.root_dir="$(CURDIR)" \
	    --LabApp.default_url=/lab/tree/notebooks/00_orientation.ipynb

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

grade: $(STAMP)
	$(PY) -m course_lib grade $(GRADE) --json grade_report.json

notebooks: $(STAMP)
	$(PY) -m course_lib build solutions notebooks

solutions: $(STAMP)
	$(PY) -m course_lib execute solutions

clean:
	rm -rf $(VENV) grade_report.json .pytest_cache

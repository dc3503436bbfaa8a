# Convenience targets; each one is a thin wrapper over scripts/ (which need only python3).
PROMPT ?= lofi hip hop beat with mellow piano and soft drums
DURATION ?= 8
MODEL ?= facebook/musicgen-melody

.PHONY: venv predict test weights weights-mbd serve schema
venv:
	bash scripts/setup.sh
predict:
	bash scripts/predict.sh "$(PROMPT)" --duration $(DURATION)
test:
	bash scripts/test.sh
weights: venv
	.venv/bin/python -m musicgen.hub "$(MODEL)"
	.venv/bin/python -m musicgen.hub --stems
weights-mbd: venv
	.venv/bin/python -m musicgen.hub --mbd
serve:
	bash scripts/serve.sh
schema: venv
	.venv/bin/python -m musicgen_dev.cog_schema

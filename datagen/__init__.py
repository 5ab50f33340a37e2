"""The DSD data-generation pipeline (paper Sec. 3.1): captions -> grid prompts -> teacher grids ->
panels and pairs -> VLM curation -> webdataset shards. Run it with ``python -m datagen`` (see cli.py)."""

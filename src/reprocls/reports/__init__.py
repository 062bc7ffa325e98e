"""Reports read, they do not run: pages, tables and figures drawn from run, study, reproduction and compression
folders and the summaries written into them. Nothing here builds a dataset, a model or a study."""

"""The report of a run (render) and the comparison of two runs (comparison): the last stage of the pipeline."""

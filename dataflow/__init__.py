"""diarflow dataflow engine: operators, graphs, drivers; knows nothing of audio models or HTTP."""

"""records: what a run leaves on disk and everything that reads it back.

The run directory's layout and atomic writes (run_files.py), the record.json schema written by
training and read by status and collect (run_record.py, summary.py), TensorBoard logs
(tensorboard.py), and the collector of many records into scaling tables (scaling.py, collect.py:
tools/collect.py) and the output_dim view (output_dim_view.py). Readers here are standard library
only: no torch, no training code.
"""

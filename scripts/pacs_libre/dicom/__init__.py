"""DICOM test tools: a synthetic study generator (``synth``) and network clients (``net``).

They serve the whole-stack verifiers (send a study, find it, prove it comes back
byte-identical) and ``pacsctl bench ingest``.
"""

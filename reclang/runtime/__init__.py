"""What generated code imports at run time, and nothing else: the scans, the chunkwise
form, the packing of variable-length batches, broadcasting helpers. No code is printed
here; code generators (reclang/codegen, reclang/backends) import nothing from it but
the names they print."""

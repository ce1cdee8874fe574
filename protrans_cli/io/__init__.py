"""File I/O shared by every command: compressed/stdin input, atomic output, FASTA, HDF5."""

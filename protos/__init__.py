"""Protocol buffer definitions (KServe v2 / Triton compatible) and their generated stubs."""

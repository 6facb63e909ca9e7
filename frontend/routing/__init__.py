"""Canary, A/B, sticky and shadow routing of public model names (``--routing FILE``): the
file (``config``), the choice of a target (``pick``, ``table``), the request hook
(``router``), shadow copies (``shadow``), hot reload (``watch``) and metrics (``metrics``)."""

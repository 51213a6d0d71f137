"""
AgentIdP's benchmarks: the token endpoint against a ceiling (`python3 bench/run.py`) and load
under faults and abuse (`python3 bench/load.py`); see bench/README.md.
"""

"""SUMO behind one small interface: libsumo in-process (default) or a TraCI subprocess."""

"""The network's building blocks, one module per config group where there is one: neurons/ (neuron), surrogate.py
(surrogate), norms.py (norm), encoders.py (encoder), readouts.py (readout), losses.py (loss), models/ (model), and
what they are built from: layers.py (time-major layers, run_layers), pooling.py, recurrent.py (RFCn), fusion.py (the
build step that makes each BN-SN-MP block one module running one op of ops/)."""

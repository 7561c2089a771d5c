"""--target hexagon: a Hexagon DSP object, compile-only (no runtime or simulator here)."""

from qcc.target_record import Target

from . import EDGE_HELP, EDGE_SCHEMES, TVM

TARGET = Target("hexagon", EDGE_HELP, **EDGE_SCHEMES, rank=50, output="an artifact folder",
                configure=f"{TVM}.cross:configure_hexagon", build=f"{TVM}.cross:build_hexagon_artifact",
                layout="tree", verify="not checked: compile-only (no Hexagon runtime or simulator)")

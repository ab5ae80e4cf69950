"""Build hook: generate the protobuf/gRPC stubs from segway_kms/api/kms.proto.

The stubs are written next to the .proto in the source tree before setuptools collects the package
modules, so a wheel ships them and an editable install (which points at the source tree) finds them.
"""
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.command.egg_info import egg_info

HERE = Path(__file__).resolve().parent
PROTO = "segway_kms/api/kms.proto"


def generate_stubs():
    from grpc_tools import protoc
    import grpc_tools

    include = Path(grpc_tools.__file__).parent / "_proto"
    args = ["grpc_tools.protoc", f"-I{HERE}", f"-I{include}", f"--python_out={HERE}",
            f"--pyi_out={HERE}", f"--grpc_python_out={HERE}", str(HERE / PROTO)]
    if protoc.main(args) != 0:
        raise SystemExit(f"protoc failed on {PROTO}")


class BuildPyWithStubs(build_py):
    def run(self):
        generate_stubs()
        super().run()


class EggInfoWithStubs(egg_info):
    # Editable installs may not run build_py; egg_info runs for every build path.
    def run(self):
        generate_stubs()
        super().run()


setup(cmdclass={"build_py": BuildPyWithStubs, "egg_info": EggInfoWithStubs})

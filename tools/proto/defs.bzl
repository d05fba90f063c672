"""Protobuf code generation with grpcio-tools' protoc (the locked @py_core set).

Contracts live under proto/ (the buf module root): proto/datapipelines/iot/v1/reading.proto has
package `datapipelines.iot.v1`, is imported as "datapipelines/iot/v1/reading.proto" and becomes
the Python module `datapipelines.iot.v1.reading_pb2`.

`py_proto_library` generates `_pb2.py`, `_pb2.pyi`, `_pb2_grpc.py` (services) and a descriptor
set (`<name>_descriptor_set`, imports included) and wraps them in a py_library.
"""

PROTO_ROOT = "proto"

ProtoSourcesInfo = provider(
    doc = "The .proto files of a target and of everything it imports.",
    fields = {"transitive_sources": "depset of .proto Files"},
)

def _py_proto_gen_impl(ctx):
    transitive = depset(
        ctx.files.srcs,
        transitive = [dep[ProtoSourcesInfo].transitive_sources for dep in ctx.attr.deps],
    )
    outputs = []
    for src in ctx.files.srcs:
        if src.owner.workspace_name or not src.short_path.startswith(PROTO_ROOT + "/"):
            fail("%s: py_proto_library takes .proto files under %s/ of this workspace" % (src, PROTO_ROOT))
        stem = src.basename[:-len(".proto")]
        outputs.append(ctx.actions.declare_file(stem + "_pb2.py", sibling = src))
        outputs.append(ctx.actions.declare_file(stem + "_pb2.pyi", sibling = src))
        if ctx.attr.grpc:
            outputs.append(ctx.actions.declare_file(stem + "_pb2_grpc.py", sibling = src))
    descriptor_set = ctx.actions.declare_file(ctx.label.name + ".desc")
    out_root = ctx.bin_dir.path + "/" + PROTO_ROOT

    args = ctx.actions.args()
    args.add("-I" + PROTO_ROOT)
    args.add("--python_out=" + out_root)
    args.add("--pyi_out=" + out_root)
    if ctx.attr.grpc:
        args.add("--grpc_python_out=" + out_root)
    args.add("--descriptor_set_out=" + descriptor_set.path)
    args.add("--include_imports")
    args.add("--include_source_info")
    args.add_all(ctx.files.srcs)
    ctx.actions.run(
        executable = ctx.executable._protoc,
        arguments = [args],
        inputs = transitive,
        outputs = outputs + [descriptor_set],
        mnemonic = "GrpcToolsProtoc",
        progress_message = "Generating Python for %s" % ctx.label,
    )
    return [
        DefaultInfo(files = depset([f for f in outputs if f.extension == "py"])),
        OutputGroupInfo(
            descriptor_set = depset([descriptor_set]),
            pyi = depset([f for f in outputs if f.extension == "pyi"]),
        ),
        ProtoSourcesInfo(transitive_sources = transitive),
    ]

py_proto_gen = rule(
    implementation = _py_proto_gen_impl,
    doc = "Runs grpcio-tools' protoc over `srcs`; prefer the py_proto_library macro.",
    attrs = {
        "srcs": attr.label_list(allow_files = [".proto"]),
        "deps": attr.label_list(providers = [ProtoSourcesInfo]),
        "grpc": attr.bool(default = False),
        "_protoc": attr.label(
            default = "//tools/proto:protoc",
            executable = True,
            cfg = "host",
        ),
    },
)

def py_proto_library(name, srcs, deps = [], grpc = False, visibility = None, **kwargs):
    """Python code for .proto files under proto/.

    Targets: `name` (py_library), `name + "_descriptor_set"` (FileDescriptorSet with imports).

    Args:
      name: by convention `<file>_py_pb2`.
      srcs: .proto files of this package.
      deps: other py_proto_library targets these files import.
      grpc: also generate `_pb2_grpc.py` for services.
      visibility: of the library and the descriptor set.
      **kwargs: passed to the py_library.
    """
    package = native.package_name()
    if package != PROTO_ROOT and not package.startswith(PROTO_ROOT + "/"):
        fail("py_proto_library belongs under %s/, not in %s" % (PROTO_ROOT, package))
    depth = len(package.split("/")) - 1
    py_proto_gen(
        name = name + "_gen",
        srcs = srcs,
        deps = [dep + "_gen" for dep in deps],
        grpc = grpc,
        visibility = visibility,
    )
    native.filegroup(
        name = name + "_descriptor_set",
        srcs = [name + "_gen"],
        output_group = "descriptor_set",
        visibility = visibility,
    )
    native.py_library(
        name = name,
        srcs = [name + "_gen"],
        # Puts proto/ on sys.path so imports read `datapipelines.<domain>.v1`.
        imports = ["/".join([".."] * depth)] if depth else ["."],
        deps = deps + ["@py_core//:protobuf"] + (["@py_core//:grpcio"] if grpc else []),
        visibility = visibility,
        **kwargs
    )

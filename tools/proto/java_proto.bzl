"""java_proto_jar: Java classes for .proto files (protoc --java_out + javac), as one jar.

For the Flink `protobuf` SQL format, which reads and writes through generated Java classes
(docs/adr/0009-flink-behaviour-job.md). grpcio-tools' protoc has no Java generator, so this
runs the official protoc from Maven (`@protoc_java`, tools/proto/protoc_repository.bzl), and
javac from the JDK directly: the repository has no Bazel Java toolchain (ADR 0001).

The jar holds the classes of `srcs` and of every .proto they import (transitively), except
the well-known types, which protobuf-java itself provides. Import roots: `proto/` for the
contracts; a file elsewhere (e.g. a job's private wire format) is imported by its path
relative to its own package.
"""

load("//tools/proto:defs.bzl", "PROTO_ROOT", "ProtoSourcesInfo")

def _import_root(src):
    if src.short_path.startswith(PROTO_ROOT + "/"):
        return PROTO_ROOT
    return src.owner.package

def _java_proto_jar_impl(ctx):
    transitive = depset(
        ctx.files.srcs,
        transitive = [dep[ProtoSourcesInfo].transitive_sources for dep in ctx.attr.deps],
    )
    protos = [f for f in transitive.to_list() if not f.owner.workspace_name]
    roots = []
    for src in protos:
        root = _import_root(src)
        if root not in roots:
            roots.append(root)
    jar = ctx.actions.declare_file(ctx.label.name + ".jar")
    descriptor_set = ctx.actions.declare_file(ctx.label.name + ".desc")

    args = ctx.actions.args()
    args.add("--protoc", ctx.executable._protoc)
    args.add("--protobuf-java", ctx.file.protobuf_java)
    args.add("--output", jar)
    args.add("--descriptor-set", descriptor_set)
    for root in roots:
        args.add("-I" + root)
    args.add_all(protos)
    ctx.actions.run(
        executable = ctx.executable._tool,
        arguments = [args],
        inputs = depset([ctx.file.protobuf_java], transitive = [transitive]),
        tools = [ctx.executable._protoc],
        outputs = [jar, descriptor_set],
        # javac is found through JAVA_HOME or the (strict) action PATH.
        use_default_shell_env = True,
        mnemonic = "JavaProtoJar",
        progress_message = "Generating and compiling Java for %s" % ctx.label,
    )
    return [
        # The jar is also a runfile, so programs that list this target in `data` find it.
        DefaultInfo(files = depset([jar]), runfiles = ctx.runfiles(files = [jar])),
        OutputGroupInfo(descriptor_set = depset([descriptor_set])),
        ProtoSourcesInfo(transitive_sources = transitive),
    ]

java_proto_jar = rule(
    implementation = _java_proto_jar_impl,
    doc = "One jar with the Java classes of `srcs` and their imports (protoc --java_out + javac).",
    attrs = {
        "srcs": attr.label_list(allow_files = [".proto"], doc = "Extra .proto files (e.g. a job's wire format)."),
        "deps": attr.label_list(
            providers = [ProtoSourcesInfo],
            doc = "py_proto_library `<name>_gen` targets (or other java_proto_jar targets) whose .proto files to include.",
        ),
        "protobuf_java": attr.label(
            mandatory = True,
            allow_single_file = [".jar"],
            doc = "The protobuf-java jar to compile against; its version must be >= the protoc version.",
        ),
        "_protoc": attr.label(
            default = "@protoc_java//:bin/protoc",
            allow_single_file = True,
            executable = True,
            cfg = "host",
        ),
        "_tool": attr.label(
            default = "//tools/proto:java_proto_jar",
            executable = True,
            cfg = "host",
        ),
    },
)

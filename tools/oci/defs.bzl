"""py_image: a py_binary packed as a reproducible OCI image layout tarball (docs/adr/0018).

Layers, bottom first, each its own cached action:
  1. base        the Debian root file system of @debian_python_rootfs (python3.11, glibc, CA
                 certificates, tzdata, the `nonroot` user), built once at fetch time;
  2. third-party every runfile of an external repository: the binary's locked pip
                 distributions (@py_core//site-packages/...) and other pinned data (@npm_*);
  3. app         every runfile of this workspace: our Python sources, generated protobuf code,
                 data files.
/app is the binary's runfiles directory of this workspace in Bazel's legacy layout: our files at
/app/<path in the repository>, external repositories at /app/external/<repo>/ (where code that
finds files through its runfiles also looks); PYTHONPATH lists the import roots Bazel's launcher
would (/app, /app/external/py_core/site-packages, ...). The entrypoint runs the image's
python3.11 on the binary's main file.

Outputs: `<name>.tar` (docker load / podman load) and `<name>.digest` (the manifest digest).
"""

RUNFILES_DIR = "/app"
IMAGE_PYTHON = "/usr/bin/python3.11"

OciLayerInfo = provider(
    doc = "One compressed layer: its blob and descriptor (JSON: digest, size, diff_id).",
    fields = ["blob", "descriptor"],
)

def _oci_tar_layer_impl(ctx):
    blob = ctx.actions.declare_file(ctx.label.name + ".tar.gz")
    descriptor = ctx.actions.declare_file(ctx.label.name + ".json")
    ctx.actions.run(
        executable = ctx.executable._layer_tool,
        arguments = [
            "tar",
            "--tar",
            ctx.file.tar.path,
            "--out",
            blob.path,
            "--descriptor",
            descriptor.path,
            "--comment",
            ctx.attr.comment,
        ],
        inputs = [ctx.file.tar],
        outputs = [blob, descriptor],
        mnemonic = "OciLayer",
        progress_message = "Compressing the layer %s" % ctx.label,
    )
    return [
        DefaultInfo(files = depset([blob, descriptor])),
        OciLayerInfo(blob = blob, descriptor = descriptor),
    ]

oci_tar_layer = rule(
    implementation = _oci_tar_layer_impl,
    doc = "A deterministic tar (the Debian base) as a gzip layer, compressed once for every image.",
    attrs = {
        "tar": attr.label(mandatory = True, allow_single_file = [".tar"]),
        "comment": attr.string(default = ""),
        "_layer_tool": attr.label(default = "//tools/oci:layer", executable = True, cfg = "host"),
    },
)

def _image_path(f):
    """Where a runfile lands below /app: Bazel's legacy runfiles layout of the main repository."""
    if f.short_path.startswith("../"):
        return "external/" + f.short_path[len("../"):]
    return f.short_path

def _import_path(ctx, imp):
    """A PyInfo import root (runfiles-relative: `<workspace>/x` or `<repo>/x`) inside the image."""
    if imp == ctx.workspace_name or imp.startswith(ctx.workspace_name + "/"):
        rest = imp[len(ctx.workspace_name) + 1:]
        return RUNFILES_DIR + ("/" + rest if rest else "")
    return RUNFILES_DIR + "/external/" + imp

def _layer(ctx, name, files, comment):
    manifest = ctx.actions.declare_file("%s_layers/%s.manifest" % (ctx.label.name, name))
    lines = ["%s/%s\t%s" % (RUNFILES_DIR, _image_path(f), f.path) for f in files]
    ctx.actions.write(manifest, "\n".join(sorted(lines)) + "\n")
    blob = ctx.actions.declare_file("%s_layers/%s.tar.gz" % (ctx.label.name, name))
    descriptor = ctx.actions.declare_file("%s_layers/%s.json" % (ctx.label.name, name))
    ctx.actions.run(
        executable = ctx.executable._layer_tool,
        arguments = [
            "files",
            "--manifest",
            manifest.path,
            "--out",
            blob.path,
            "--descriptor",
            descriptor.path,
            "--comment",
            comment,
        ],
        inputs = depset([manifest], transitive = [depset(files)]),
        outputs = [blob, descriptor],
        mnemonic = "OciLayer",
        progress_message = "Writing the %s layer of %s" % (name, ctx.label),
    )
    return descriptor, blob

def _py_image_impl(ctx):
    binary = ctx.attr.binary
    executable = binary[DefaultInfo].files_to_run.executable
    runfiles = binary[DefaultInfo].default_runfiles.files.to_list()
    ours, theirs = [], []
    main_found = False
    for f in runfiles:
        if f == executable:
            continue  # Bazel's launcher stub names the build machine's interpreter
        if f.owner and f.owner.workspace_name:
            theirs.append(f)
        else:
            ours.append(f)
            if f.short_path == ctx.attr.main:
                main_found = True
    if not main_found:
        fail("%s: main %s is not among the runfiles of %s" % (ctx.label, ctx.attr.main, binary.label))

    base = ctx.attr.base_layer[OciLayerInfo]
    layers = [(base.descriptor, base.blob)]
    layers.append(_layer(ctx, "third_party", theirs, "third-party Python distributions and pinned data"))
    layers.append(_layer(ctx, "app", ours, "application code and generated protobuf code"))

    imports = [RUNFILES_DIR]
    if PyInfo in binary:
        for imp in binary[PyInfo].imports.to_list():
            if _import_path(ctx, imp) not in imports:
                imports.append(_import_path(ctx, imp))
    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "PYTHONPATH": ":".join(imports),
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONUNBUFFERED": "1",
        "LANG": "C.UTF-8",
        "HOME": "/home/nonroot",
    }
    env.update(ctx.attr.env)

    out = ctx.actions.declare_file(ctx.label.name + ".tar")
    digest = ctx.actions.declare_file(ctx.label.name + ".digest")
    args = ctx.actions.args()
    inputs = []
    for descriptor, blob in layers:
        args.add_all("--layer", [descriptor, blob])
        inputs += [descriptor, blob]
    args.add("--repo-tag", ctx.attr.repo_tag)
    args.add("--entrypoint", json.encode([IMAGE_PYTHON, "%s/%s" % (RUNFILES_DIR, ctx.attr.main)]))
    args.add("--user", ctx.attr.user)
    args.add("--workdir", ctx.attr.workdir)
    for key in sorted(env):
        args.add("--env", "%s=%s" % (key, env[key]))
    labels = {
        "org.opencontainers.image.title": ctx.attr.repo_tag.rpartition(":")[0],
        "org.opencontainers.image.description": ctx.attr.description,
        "io.datapipelines.bazel.target": str(binary.label),
    }
    labels.update(ctx.attr.labels)
    for key in sorted(labels):
        args.add("--label", "%s=%s" % (key, labels[key]))
    for port in ctx.attr.ports:
        args.add("--expose", port)
    if ctx.attr.stamp:
        args.add("--stamp-file", ctx.info_file)
        inputs.append(ctx.info_file)
    args.add("--out", out)
    args.add("--digest-out", digest)
    ctx.actions.run(
        executable = ctx.executable._image_tool,
        arguments = [args],
        inputs = inputs,
        outputs = [out, digest],
        mnemonic = "OciImage",
        progress_message = "Assembling the OCI image %s" % ctx.label,
    )
    return [
        DefaultInfo(files = depset([out, digest]), runfiles = ctx.runfiles(files = [out, digest])),
        OutputGroupInfo(digest = depset([digest])),
    ]

py_image = rule(
    implementation = _py_image_impl,
    doc = "A py_binary as an OCI image layout tarball; see the module docstring.",
    attrs = {
        "binary": attr.label(mandatory = True, executable = True, cfg = "target", doc = "The py_binary to ship."),
        "main": attr.string(mandatory = True, doc = "Its main file, workspace-relative (services/ingest/main.py)."),
        "repo_tag": attr.string(mandatory = True, doc = "name:tag the loaded image gets (dp-ingest:latest)."),
        "description": attr.string(default = ""),
        "env": attr.string_dict(doc = "Extra environment (overrides the defaults)."),
        "labels": attr.string_dict(),
        "ports": attr.string_list(doc = "Exposed ports, `8400/tcp`."),
        "user": attr.string(default = "65532:65532", doc = "The base's `nonroot` user."),
        "workdir": attr.string(default = "/home/nonroot"),
        "stamp": attr.bool(default = False, doc = "Label the git revision (stable-status.txt); set by the macro from --stamp."),
        "base_layer": attr.label(default = "//tools/oci:debian_python_base", providers = [OciLayerInfo]),
        "_layer_tool": attr.label(default = "//tools/oci:layer", executable = True, cfg = "host"),
        "_image_tool": attr.label(default = "//tools/oci:image", executable = True, cfg = "host"),
    },
)

def oci_py_image(name, **kwargs):
    """py_image with the git revision stamped only under `--stamp` (`--config=stamp`)."""
    py_image(
        name = name,
        stamp = select({
            "//tools/oci:stamped": True,
            "//conditions:default": False,
        }),
        **kwargs
    )

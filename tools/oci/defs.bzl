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

def _image_path(ctx, f):
    """Where a runfile lands: Bazel's legacy runfiles layout of the main repository below app_dir
    (external repositories below external_dir when that is set: app_dir/external links there)."""
    if f.short_path.startswith("../"):
        return "%s/%s" % (_external_dir(ctx), f.short_path[len("../"):])
    return "%s/%s" % (ctx.attr.app_dir, f.short_path)

def _external_dir(ctx):
    return ctx.attr.external_dir or ctx.attr.app_dir + "/external"

def _import_path(ctx, imp):
    """A PyInfo import root (runfiles-relative: `<workspace>/x` or `<repo>/x`) inside the image."""
    if imp == ctx.workspace_name or imp.startswith(ctx.workspace_name + "/"):
        rest = imp[len(ctx.workspace_name) + 1:]
        return ctx.attr.app_dir + ("/" + rest if rest else "")
    return ctx.attr.app_dir + "/external/" + imp

def _engine_layout(ctx, runfiles):
    """The engine's home (FLINK_HOME, SPARK_HOME) made of runfiles: copies and links by prefix.

    Returns ([(image path, file)], {link path: target}).
    """
    copies, links = {}, {}
    for f in runfiles:
        path = _image_path(ctx, f)
        for prefix, dest in ctx.attr.copies.items():
            if path.startswith(prefix + "/"):
                copies[dest + "/" + path[len(prefix) + 1:]] = f
        for prefix, dest in ctx.attr.links.items():
            if path.startswith(prefix + "/") and path.endswith(".jar"):
                links[dest + "/" + f.basename] = path
    for target, path in ctx.attr.files.items():  # these win over copies (the image's own config)
        for f in target.files.to_list():
            copies[path] = f
    links.update(ctx.attr.symlinks)
    if ctx.attr.external_dir:
        links[ctx.attr.app_dir + "/external"] = ctx.attr.external_dir
    return [(path, copies[path]) for path in sorted(copies)], links

def _layer(ctx, name, files, comment, copies = [], links = {}):
    manifest = ctx.actions.declare_file("%s_layers/%s.manifest" % (ctx.label.name, name))
    lines = ["%s\t%s" % (_image_path(ctx, f), f.path) for f in files]
    lines += ["%s\t%s" % (path, f.path) for path, f in copies]
    ctx.actions.write(manifest, "\n".join(sorted(lines)) + "\n")
    links_file = ctx.actions.declare_file("%s_layers/%s.links" % (ctx.label.name, name))
    ctx.actions.write(links_file, "".join(["%s\t%s\n" % (path, links[path]) for path in sorted(links)]))
    blob = ctx.actions.declare_file("%s_layers/%s.tar.gz" % (ctx.label.name, name))
    descriptor = ctx.actions.declare_file("%s_layers/%s.json" % (ctx.label.name, name))
    ctx.actions.run(
        executable = ctx.executable._layer_tool,
        arguments = [
            "files",
            "--manifest",
            manifest.path,
            "--links",
            links_file.path,
            "--out",
            blob.path,
            "--descriptor",
            descriptor.path,
            "--comment",
            comment,
        ],
        inputs = depset([manifest, links_file], transitive = [depset(files + [f for _, f in copies])]),
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
    copies, links = _engine_layout(ctx, runfiles)
    comment = "application code and generated protobuf code"
    if copies or links:
        comment += "; the engine's home: launch scripts, configuration, links to its jars"
    layers.append(_layer(ctx, "app", ours, comment, copies, links))

    imports = [ctx.attr.app_dir]
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
    if ctx.attr.external_dir:
        env["RUNFILES_DIR"] = ctx.attr.external_dir  # tools/jvm/classpath finds <repo>/jars there
    env.update(ctx.attr.env)

    out = ctx.actions.declare_file(ctx.label.name + ".tar")
    digest = ctx.actions.declare_file(ctx.label.name + ".digest")
    args = ctx.actions.args()
    inputs = []
    for descriptor, blob in layers:
        args.add_all("--layer", [descriptor, blob])
        inputs += [descriptor, blob]
    args.add("--repo-tag", ctx.attr.repo_tag)
    entrypoint = ctx.attr.entrypoint or [IMAGE_PYTHON, "%s/%s" % (ctx.attr.app_dir, ctx.attr.main)]
    args.add("--entrypoint", json.encode(entrypoint))
    args.add("--cmd", json.encode(ctx.attr.cmd))
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
        "app_dir": attr.string(default = RUNFILES_DIR, doc = "Where the runfiles tree of this workspace goes."),
        "external_dir": attr.string(doc = "Where external repositories go instead of app_dir/external (then linked)."),
        "entrypoint": attr.string_list(doc = "Instead of the image's python on main."),
        "cmd": attr.string_list(doc = "Default arguments of the entrypoint."),
        "copies": attr.string_dict(doc = "{image path prefix of runfiles: folder}: every file below copied there."),
        "links": attr.string_dict(doc = "{image path prefix of runfiles: folder}: a link per jar below, by file name."),
        "symlinks": attr.string_dict(doc = "{path: target}: further links (a whole folder of the engine)."),
        "files": attr.label_keyed_string_dict(allow_files = True, doc = "{file: image path}: extra files (entrypoint, config)."),
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

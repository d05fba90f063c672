"""dp_image: one image of deploy/images with its structure test (docs/adr/0018).

Every image needs the same facts twice, once to build and once to check (binary, main, the name
docker/podman give it, the entrypoint, the layout): the macro states them once and declares
`<name>` (oci_py_image) and `<name>_structure_test` (image_structure_test.py); with
`reproducible = True` also `<name>_rebuild` (the same image built again into another output
path) and `<name>_reproducible_test` (reproducible_test.py: the two are byte-identical, and the
writers re-run over the image's content elsewhere give the same digests).
"""

load("//tools/oci:defs.bzl", "oci_py_image")
load("//tools/pytest:defs.bzl", "py_pytest_test")

def dp_image(
        name,
        binary,
        main,
        repo_tag,
        description,
        help_text,
        imports,
        env = {},
        ports = [],
        files_present = [],
        absent = ["pytest", "hypothesis"],
        run = [],
        structure_test_size = "medium",
        app_dir = "/app",
        site_packages = "/app/external/py_core/site-packages",
        layer_roots = ["app"],
        reproducible = False,
        **image_kwargs):
    """An image and its structure test.

    Args:
      name: target name; the image is `bazel-bin/deploy/images/<name>.tar`.
      binary, main, repo_tag, description, env, ports: as oci_py_image.
      help_text: a phrase the entrypoint's --help prints.
      imports: third-party modules the image's python must import.
      files_present: paths (no leading slash) that must exist in the image.
      absent: distributions that must not be in `site_packages` (test-only ones).
      run: [[argv, phrase], ...] further programs run inside the image (engine CLI, job --help).
      structure_test_size: the test's size (large for the biggest images).
      app_dir, site_packages, layer_roots: where the layers above the base write.
      reproducible: also build it twice and compare (`<name>_reproducible_test`).
      **image_kwargs: further oci_py_image attributes (entrypoint, copies, links, base_layer, ...).
    """
    image_names = [name, name + "_rebuild"] if reproducible else [name]
    for image_name in image_names:
        oci_py_image(
            name = image_name,
            binary = binary,
            description = description,
            env = env,
            main = main,
            ports = ports,
            repo_tag = repo_tag,
            app_dir = app_dir,
            visibility = ["//visibility:public"] if image_name == name else ["//visibility:private"],
            **image_kwargs
        )
    if reproducible:
        py_pytest_test(
            name = name + "_reproducible_test",
            size = structure_test_size,
            srcs = ["reproducible_test.py"],
            data = [
                ":" + name,
                ":" + name + "_rebuild",
            ],
            env = {
                "IMAGE_A": "$(rootpaths :%s)" % name,
                "IMAGE_B": "$(rootpaths :%s_rebuild)" % name,
            },
            deps = ["//tools/oci:image_lib"],
        )
    entrypoint = image_kwargs.get("entrypoint")
    py_pytest_test(
        name = name + "_structure_test",
        size = structure_test_size,
        srcs = ["image_structure_test.py"],
        data = [":" + name],
        env = {
            "IMAGE_ABSENT": " ".join(absent),
            "IMAGE_APP_DIR": app_dir,
            "IMAGE_ENTRYPOINT": json.encode(entrypoint) if entrypoint else "",
            "IMAGE_FILES": " ".join(files_present),
            "IMAGE_HELP_TEXT": help_text,
            "IMAGE_IMPORTS": " ".join(imports),
            "IMAGE_MAIN": "%s/%s" % (app_dir, main),
            "IMAGE_REPO_TAG": repo_tag,
            "IMAGE_ROOTS": " ".join(layer_roots),
            "IMAGE_RUN": json.encode(run),
            "IMAGE_SITE": site_packages,
            "OCI_IMAGE": "$(rootpaths :%s)" % name,
        },
        # chroot needs CAP_SYS_CHROOT: unsandboxed, as root (or unshare without it).
        tags = ["no-sandbox"],
    )

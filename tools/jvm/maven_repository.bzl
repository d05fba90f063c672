"""maven_lock_repository: the jars of one Maven lock as an external repository.

The lock (third_party/jvm/<set>/maven_lock.txt, written by tools/jvm/update_lock.py) lists the
whole runtime closure with a SHA-256 per jar. The rule hands mvn a generated pom that names
exactly those jars, each with every transitive dependency excluded, and runs
`dependency:copy-dependencies` once; then it checks every jar against the lock.

mvn is the ordinary client with the user's own settings and local repository (~/.m2, or
$MAVEN_REPO_LOCAL), which outlives clones and output bases: a warm fetch is offline and takes a
few seconds. An offline attempt (`mvn -o`) is made first; only a miss goes to the network.

The repository holds:
  jars/<group>.<artifact>-<version>[-<classifier>].jar   (every jar is exported)
  :classpath                       filegroup of all jars (the runtime classpath)
  :<group>_<artifact> (normalised) filegroup of one jar, e.g. :org_apache_kafka_kafka_clients
"""

# Pinned so that no plugin version lookup touches the network once it is in the local repository.
_DEPENDENCY_PLUGIN = "org.apache.maven.plugins:maven-dependency-plugin:3.8.1"

def _parse_lock(text, lock_label):
    """Returns a list of structs (group, artifact, version, classifier, sha256)."""
    jars = []
    for number, raw in enumerate(text.splitlines()):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        fields = [field for field in line.replace("\t", " ").split(" ") if field]
        parts = fields[0].split(":")
        if len(fields) != 2 or len(fields[1]) != 64 or len(parts) not in (3, 4):
            fail("%s:%d: want `group:artifact:version[:classifier] <sha256>`, got %r" % (lock_label, number + 1, raw))
        jars.append(struct(
            coordinate = fields[0],
            group = parts[0],
            artifact = parts[1],
            version = parts[2],
            classifier = parts[3] if len(parts) == 4 else "",
            sha256 = fields[1],
        ))
    if not jars:
        fail("%s locks no jars (run its update target)" % lock_label)
    return jars

def _file_name(jar):
    # copy-dependencies' naming with -Dmdep.prependGroupId=true.
    suffix = "-" + jar.classifier if jar.classifier else ""
    return "%s.%s-%s%s.jar" % (jar.group, jar.artifact, jar.version, suffix)

def _target_name(jar):
    name = jar.group + "_" + jar.artifact + ("_" + jar.classifier if jar.classifier else "")
    for char in [".", "-", ":"]:
        name = name.replace(char, "_")
    return name

def _pom(rctx, jars):
    dependencies = []
    for jar in jars:
        classifier = "<classifier>%s</classifier>" % jar.classifier if jar.classifier else ""
        dependencies.append(
            "    <dependency><groupId>%s</groupId><artifactId>%s</artifactId><version>%s</version>%s" % (
                jar.group,
                jar.artifact,
                jar.version,
                classifier,
            ) +
            "<exclusions><exclusion><groupId>*</groupId><artifactId>*</artifactId></exclusion></exclusions></dependency>",
        )
    return "\n".join([
        "<project>",
        "  <modelVersion>4.0.0</modelVersion>",
        "  <groupId>bazel.external</groupId><artifactId>%s</artifactId><version>0</version><packaging>pom</packaging>" % rctx.name,
        "  <dependencies>",
    ] + dependencies + [
        "  </dependencies>",
        "</project>",
        "",
    ])

def _sha256_sums(rctx, paths):
    """Maps each path to its SHA-256, with coreutils' sha256sum or, failing that, shasum."""
    for tool in (["sha256sum"], ["shasum", "-a", "256"]):
        binary = rctx.which(tool[0])
        if not binary:
            continue
        res = rctx.execute([binary] + tool[1:] + paths)
        if res.return_code != 0:
            fail("%s failed for @%s:\n%s" % (tool[0], rctx.name, res.stderr))
        sums = {}
        for line in res.stdout.splitlines():
            digest, _, path = line.partition(" ")
            sums[path.strip().lstrip("*")] = digest
        return sums
    fail("@%s: neither sha256sum nor shasum is on PATH to verify the jars" % rctx.name)

def _maven_lock_repository_impl(rctx):
    lock_label = str(rctx.attr.lock)
    jars = _parse_lock(rctx.read(rctx.path(rctx.attr.lock)), lock_label)

    mvn = rctx.which("mvn")
    if not mvn:
        fail("@%s needs mvn on PATH to fetch the jars of %s: install Maven 3.8+ (Debian: apt-get install maven)" % (rctx.name, lock_label))
    rctx.file("pom.xml", _pom(rctx, jars))
    command = [str(mvn), "-B", "-q", "-f", "pom.xml"]
    local_repository = rctx.os.environ.get("MAVEN_REPO_LOCAL", "")
    if local_repository:
        command.append("-Dmaven.repo.local=" + local_repository)
    command += [
        _DEPENDENCY_PLUGIN + ":copy-dependencies",
        "-DoutputDirectory=jars",
        "-Dmdep.prependGroupId=true",
        "-DexcludeTransitive=true",
        "-DincludeScope=runtime",
        "-Dmdep.overWriteReleases=true",
    ]

    rctx.report_progress("mvn -o: %d jars from the local Maven repository" % len(jars))
    res = rctx.execute(command[:2] + ["-o"] + command[2:], timeout = rctx.attr.timeout, quiet = True)
    if res.return_code != 0:
        rctx.report_progress("mvn: fetching %d jars" % len(jars))
        res = rctx.execute(command, timeout = rctx.attr.timeout, quiet = True)
    if res.return_code != 0:
        fail("mvn could not fetch the jars of %s for @%s (exit %d). Is Maven Central (or your mirror in ~/.m2/settings.xml) reachable?\n%s%s" % (
            lock_label,
            rctx.name,
            res.return_code,
            res.stdout,
            res.stderr,
        ))

    names = [_file_name(jar) for jar in jars]
    missing = [name for name in names if not rctx.path("jars/" + name).exists]
    if missing:
        fail("@%s: mvn did not produce %s" % (rctx.name, ", ".join(missing)))
    sums = _sha256_sums(rctx, ["jars/" + name for name in names])
    for jar, name in zip(jars, names):
        actual = sums.get("jars/" + name, "(none)")
        if actual != jar.sha256:
            fail(("@%s: SHA-256 mismatch for %s (jars/%s)\n  locked in %s: %s\n  fetched:       %s\n" +
                  "If the lock is right, the jar in your local Maven repository is corrupt or was replaced: delete it and fetch again. " +
                  "If the artifact legitimately changed, re-run the lock's update target.") % (
                rctx.name,
                jar.coordinate,
                name,
                lock_label,
                jar.sha256,
                actual,
            ))
    rctx.delete("pom.xml")

    build = [
        "# Generated by maven_lock_repository from %s. Do not edit." % lock_label,
        'package(default_visibility = ["//visibility:public"])',
        "",
        "exports_files([",
    ] + ['    "jars/%s",' % name for name in names] + [
        "])",
        "",
        "# The runtime classpath: every locked jar.",
        "filegroup(",
        '    name = "classpath",',
        "    srcs = [",
    ] + ['        "jars/%s",' % name for name in names] + [
        "    ],",
        ")",
    ]
    for jar, name in zip(jars, names):
        build += [
            "",
            "filegroup(",
            '    name = "%s",' % _target_name(jar),
            '    srcs = ["jars/%s"],' % name,
            ")",
        ]
    rctx.file("BUILD.bazel", "\n".join(build) + "\n")
    rctx.file("WORKSPACE", 'workspace(name = "%s")\n' % rctx.name)

maven_lock_repository = repository_rule(
    implementation = _maven_lock_repository_impl,
    attrs = {
        "lock": attr.label(mandatory = True, allow_single_file = True, doc = "maven_lock.txt: every jar with its SHA-256."),
        "timeout": attr.int(default = 1800, doc = "Seconds one mvn run may take."),
    },
    environ = ["MAVEN_REPO_LOCAL", "MAVEN_OPTS", "JAVA_HOME", "M2_HOME", "MAVEN_HOME"],
    doc = "Fetches exactly the jars of a Maven lock with mvn and checks each SHA-256.",
)

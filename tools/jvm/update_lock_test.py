import pathlib

from tools.jvm import update_lock
from tools.jvm.maven_lock import Coordinate

LISTING = """
The following files have been resolved:
   org.example:app:jar:1.0:compile:/m2/org/example/app/1.0/app-1.0.jar
   org.example:dep:jar:2.1:runtime:/m2/org/example/dep/2.1/dep-2.1.jar -- module org.example.dep (auto)
   org.example:native:jar:linux-x86_64:3.0:runtime:/m2/org/example/native/3.0/native-3.0-linux-x86_64.jar -- module n [auto]

"""


def test_parse_dependency_list_reads_classifiers_and_module_suffixes():
    resolved = update_lock.parse_dependency_list(LISTING)
    assert resolved == {
        Coordinate("org.example", "app", "1.0"): pathlib.Path("/m2/org/example/app/1.0/app-1.0.jar"),
        Coordinate("org.example", "dep", "2.1"): pathlib.Path("/m2/org/example/dep/2.1/dep-2.1.jar"),
        Coordinate("org.example", "native", "3.0", "linux-x86_64"): pathlib.Path(
            "/m2/org/example/native/3.0/native-3.0-linux-x86_64.jar"
        ),
    }


def test_root_pom_lists_every_root():
    pom = update_lock.root_pom([Coordinate("g", "a", "1"), Coordinate("g", "b", "2", "tests")])
    assert "<artifactId>a</artifactId><version>1</version></dependency>" in pom
    assert "<classifier>tests</classifier>" in pom

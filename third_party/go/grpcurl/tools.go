//go:build tools

// Package grpcurl only names the program it pins: go.mod holds its version, go.sum the hash of
// every module it compiles. //tools/go:go_binary_repository.bzl builds it as @grpcurl.
package grpcurl

import _ "github.com/fullstorydev/grpcurl/cmd/grpcurl"

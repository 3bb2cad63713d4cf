"""SCIM 2.0 (RFC 7643/7644): the hospital's IdP provisions people and departments.

Pure modules (no I/O, `now` passed in): `resources` (SCIM resources <-> directory records, the
discovery documents), `query` (filter and pagination), `patching` (PATCH), `leavers` (what a
change of a person's status does to their revocation). The HTTP edge is
`signaling.http.routes.scim`; the executor `signaling.provisioning`.
"""

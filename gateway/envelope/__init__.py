"""The edXML format: the package model, its codec and builder, hostile-XML-safe parsing,
the XSD checks.
"""

// Command relay runs a Relay node.
package main

func main() {}

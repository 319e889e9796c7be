module layout

go 1.21

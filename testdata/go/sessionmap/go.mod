module fixture/sessionmap

go 1.21
